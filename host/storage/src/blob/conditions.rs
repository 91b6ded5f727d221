//! Conditional headers for blob operations (storage-semantics.md §1 "Conditional headers").

use crate::clock::Timestamp;
use crate::error::BlobError;

/// An ETag condition: a specific ETag or `*` (any: the resource must exist).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ETagMatch {
    /// `*`.
    Any,
    /// One ETag, compared exactly.
    Tag(String),
}

impl ETagMatch {
    fn matches(&self, etag: &str) -> bool {
        match self {
            ETagMatch::Any => true,
            ETagMatch::Tag(t) => t == etag,
        }
    }
}

/// If-Match, If-None-Match, If-Modified-Since and If-Unmodified-Since. Dates compare at second
/// resolution, as HTTP dates do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    /// Go ahead only if the ETag matches (`*`: only if it exists).
    pub if_match: Option<ETagMatch>,
    /// Go ahead only if the ETag does not match (`*`: only if it does not exist).
    pub if_none_match: Option<ETagMatch>,
    /// Go ahead only if modified after this time.
    pub if_modified_since: Option<Timestamp>,
    /// Go ahead only if not modified after this time.
    pub if_unmodified_since: Option<Timestamp>,
}

/// What a condition is checked against: the current ETag and Last-Modified, if the resource exists.
pub type Current<'a> = Option<(&'a str, Timestamp)>;

fn modified_since(last_modified: Timestamp, since: Timestamp) -> bool {
    last_modified.as_secs() > since.as_secs()
}

impl Conditions {
    /// A condition-free operation.
    pub fn none() -> Self {
        Self::default()
    }

    /// Create-only (`If-None-Match: *`).
    pub fn create_only() -> Self {
        Conditions {
            if_none_match: Some(ETagMatch::Any),
            ..Self::default()
        }
    }

    /// Only if the ETag is still `etag`.
    pub fn if_match(etag: impl Into<String>) -> Self {
        Conditions {
            if_match: Some(ETagMatch::Tag(etag.into())),
            ..Self::default()
        }
    }

    /// A read (Get Blob, Get Blob Properties) of an existing resource.
    /// If-Match / If-Unmodified-Since failing gives 412; If-None-Match and If-Modified-Since are
    /// OR-ed and give 304 only if neither passes; `If-None-Match: *` can never pass a read.
    pub fn check_read(&self, etag: &str, last_modified: Timestamp) -> Result<(), BlobError> {
        if self.if_none_match == Some(ETagMatch::Any) {
            return Err(BlobError::UnsatisfiableCondition);
        }
        if self.if_match.as_ref().is_some_and(|m| !m.matches(etag))
            || self
                .if_unmodified_since
                .is_some_and(|t| modified_since(last_modified, t))
        {
            return Err(BlobError::ConditionNotMet);
        }
        let none_match_passes = self.if_none_match.as_ref().map(|m| !m.matches(etag));
        let modified_passes = self
            .if_modified_since
            .map(|t| modified_since(last_modified, t));
        match (none_match_passes, modified_passes) {
            (None, None) => Ok(()),
            (Some(a), Some(b)) if a || b => Ok(()),
            (Some(true), None) | (None, Some(true)) => Ok(()),
            _ => Err(BlobError::NotModified),
        }
    }

    /// A write. At most If-Match + If-Unmodified-Since or If-None-Match + If-Modified-Since.
    /// `create_only_op`: Put Blob / Put Block List, where `If-None-Match: *` on an existing blob
    /// is `BlobAlreadyExists` rather than `ConditionNotMet`.
    pub fn check_write(&self, current: Current<'_>, create_only_op: bool) -> Result<(), BlobError> {
        let etag_side = self.if_match.is_some() || self.if_unmodified_since.is_some();
        let none_side = self.if_none_match.is_some() || self.if_modified_since.is_some();
        if etag_side && none_side {
            return Err(BlobError::MultipleConditionHeadersNotSupported(
                "a write accepts If-Match with If-Unmodified-Since, or If-None-Match with If-Modified-Since",
            ));
        }
        let Some((etag, last_modified)) = current else {
            // Nothing there: If-Match fails; the other conditions pass.
            return if self.if_match.is_some() {
                Err(BlobError::ConditionNotMet)
            } else {
                Ok(())
            };
        };
        if self.if_none_match == Some(ETagMatch::Any) {
            return Err(if create_only_op {
                BlobError::BlobAlreadyExists(String::new())
            } else {
                BlobError::ConditionNotMet
            });
        }
        let fails = self.if_match.as_ref().is_some_and(|m| !m.matches(etag))
            || self.if_none_match.as_ref().is_some_and(|m| m.matches(etag))
            || self
                .if_modified_since
                .is_some_and(|t| !modified_since(last_modified, t))
            || self
                .if_unmodified_since
                .is_some_and(|t| modified_since(last_modified, t));
        if fails {
            Err(BlobError::ConditionNotMet)
        } else {
            Ok(())
        }
    }

    /// Container operations accept only the date conditions.
    pub fn check_container(&self, last_modified: Timestamp) -> Result<(), BlobError> {
        if self.if_match.is_some() || self.if_none_match.is_some() {
            return Err(BlobError::MultipleConditionHeadersNotSupported(
                "container operations accept only If-Modified-Since and If-Unmodified-Since",
            ));
        }
        if self
            .if_modified_since
            .is_some_and(|t| !modified_since(last_modified, t))
            || self
                .if_unmodified_since
                .is_some_and(|t| modified_since(last_modified, t))
        {
            return Err(BlobError::ConditionNotMet);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "\"0x8D1\"";
    fn at(s: u64) -> Timestamp {
        Timestamp::from_secs(s)
    }

    fn read(c: Conditions) -> &'static str {
        match c.check_read(T, at(100)) {
            Ok(()) => "ok",
            Err(e) => e.code(),
        }
    }

    fn write(c: Conditions, exists: bool, create: bool) -> &'static str {
        match c.check_write(exists.then_some((T, at(100))), create) {
            Ok(()) => "ok",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn read_outcomes() {
        let tag = |t: &str| Some(ETagMatch::Tag(t.into()));
        assert_eq!(
            read(Conditions {
                if_match: tag(T),
                ..Default::default()
            }),
            "ok"
        );
        assert_eq!(
            read(Conditions {
                if_match: tag("x"),
                ..Default::default()
            }),
            "ConditionNotMet"
        );
        assert_eq!(
            read(Conditions {
                if_unmodified_since: Some(at(99)),
                ..Default::default()
            }),
            "ConditionNotMet"
        );
        assert_eq!(
            read(Conditions {
                if_unmodified_since: Some(at(100)),
                ..Default::default()
            }),
            "ok"
        );
        let nm = Conditions {
            if_none_match: tag(T),
            ..Default::default()
        };
        assert_eq!(nm.check_read(T, at(100)).unwrap_err().status(), 304);
        assert_eq!(
            read(Conditions {
                if_modified_since: Some(at(100)),
                ..Default::default()
            }),
            "ConditionNotMet"
        );
        assert_eq!(
            read(Conditions {
                if_modified_since: Some(at(99)),
                ..Default::default()
            }),
            "ok"
        );
        // OR-ed: the ETag differs, so the copy is stale even though the date says otherwise.
        assert_eq!(
            read(Conditions {
                if_none_match: tag("x"),
                if_modified_since: Some(at(200)),
                ..Default::default()
            }),
            "ok"
        );
        assert_eq!(
            read(Conditions {
                if_none_match: Some(ETagMatch::Any),
                ..Default::default()
            }),
            "UnsatisfiableCondition"
        );
    }

    #[test]
    fn write_outcomes() {
        let tag = |t: &str| Some(ETagMatch::Tag(t.into()));
        assert_eq!(write(Conditions::if_match(T), true, false), "ok");
        assert_eq!(
            write(Conditions::if_match("x"), true, false),
            "ConditionNotMet"
        );
        assert_eq!(
            write(Conditions::if_match(T), false, false),
            "ConditionNotMet"
        );
        assert_eq!(
            write(
                Conditions {
                    if_match: Some(ETagMatch::Any),
                    ..Default::default()
                },
                false,
                true
            ),
            "ConditionNotMet"
        );
        assert_eq!(write(Conditions::create_only(), false, true), "ok");
        assert_eq!(
            write(Conditions::create_only(), true, true),
            "BlobAlreadyExists"
        );
        assert_eq!(
            write(Conditions::create_only(), true, false),
            "ConditionNotMet"
        );
        assert_eq!(
            write(
                Conditions {
                    if_none_match: tag(T),
                    ..Default::default()
                },
                true,
                false
            ),
            "ConditionNotMet"
        );
        assert_eq!(
            write(
                Conditions {
                    if_modified_since: Some(at(100)),
                    ..Default::default()
                },
                true,
                false
            ),
            "ConditionNotMet"
        );
        assert_eq!(
            write(
                Conditions {
                    if_modified_since: Some(at(100)),
                    ..Default::default()
                },
                false,
                false
            ),
            "ok"
        );
        assert_eq!(
            write(
                Conditions {
                    if_unmodified_since: Some(at(50)),
                    ..Default::default()
                },
                true,
                false
            ),
            "ConditionNotMet"
        );
        assert_eq!(
            write(
                Conditions {
                    if_match: tag(T),
                    if_none_match: tag("y"),
                    ..Default::default()
                },
                true,
                false
            ),
            "MultipleConditionHeadersNotSupported"
        );
        assert_eq!(
            write(
                Conditions {
                    if_match: tag(T),
                    if_modified_since: Some(at(1)),
                    ..Default::default()
                },
                true,
                false
            ),
            "MultipleConditionHeadersNotSupported"
        );
        assert_eq!(
            write(
                Conditions {
                    if_match: tag(T),
                    if_unmodified_since: Some(at(100)),
                    ..Default::default()
                },
                true,
                false
            ),
            "ok"
        );
    }
}
