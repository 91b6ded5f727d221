//! Table service (stub while under construction).
pub mod datetime;
/// The table service.
pub trait TableStore: Send + Sync {}
impl TableStore for crate::RedbStore {}
