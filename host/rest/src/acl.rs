//! Stored access policies as Azure writes them (`<SignedIdentifiers>`), for Get/Set Container
//! ACL, Get/Set Queue ACL and Get/Set Table ACL alike.

use rolehost_storage::Timestamp;
use rolehost_storage::blob::AccessPolicy;

use http::Response;
use rolehost_storage::{AccountName, Backend};

use crate::auth::{Level, Need};
use crate::body::collect_limited;
use crate::xml::{self, Xml};
use crate::{Ctx, InBody, RestBody, RestError, Service, empty, xml_reply};

/// Largest Set ACL body read: five policies are a few hundred bytes each.
pub const MAX_ACL_BODY: usize = 64 * 1024;

fn iso(t: Timestamp) -> String {
    rolehost_storage::table::datetime::format_micros(
        i64::try_from(t.as_micros()).unwrap_or(i64::MAX),
    )
}

fn parse_time(field: &str, v: &str) -> Result<Timestamp, RestError> {
    let micros = rolehost_storage::table::datetime::parse_rfc3339(v.trim()).ok_or_else(|| {
        RestError::bad_body(
            "InvalidXmlNodeValue",
            format!("{field} {v:?} is not a date"),
        )
    })?;
    Ok(Timestamp(u64::try_from(micros).unwrap_or(0)))
}

/// `<SignedIdentifiers>` of `policies`.
pub fn policies_xml(policies: &[AccessPolicy]) -> Xml {
    let mut x = Xml::new();
    x.open("SignedIdentifiers");
    for pol in policies {
        x.open("SignedIdentifier")
            .elem("Id", &pol.id)
            .open("AccessPolicy");
        if let Some(t) = pol.start {
            x.elem("Start", &iso(t));
        }
        if let Some(t) = pol.expiry {
            x.elem("Expiry", &iso(t));
        }
        x.elem("Permission", &pol.permissions)
            .close("AccessPolicy")
            .close("SignedIdentifier");
    }
    x.close("SignedIdentifiers");
    x
}

/// The policies of a Set ACL body (empty: none), at most [`MAX_ACL_BODY`] bytes. The engine
/// checks Azure's rules on them.
pub async fn read_policies(body: InBody) -> Result<Vec<AccessPolicy>, RestError> {
    let raw = collect_limited(body, MAX_ACL_BODY).await?;
    let mut policies = Vec::new();
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(policies);
    }
    let root = xml::parse(&raw)?;
    if root.name != "SignedIdentifiers" {
        return Err(RestError::bad_body(
            "InvalidXmlDocument",
            "the root element must be SignedIdentifiers",
        ));
    }
    for si in root.all("SignedIdentifier") {
        let ap = si.child("AccessPolicy");
        let get = |n: &str| {
            ap.and_then(|a| a.child_text(n))
                .filter(|t| !t.trim().is_empty())
        };
        policies.push(AccessPolicy {
            id: si.child_text("Id").unwrap_or("").to_string(),
            start: get("Start").map(|v| parse_time("Start", v)).transpose()?,
            expiry: get("Expiry").map(|v| parse_time("Expiry", v)).transpose()?,
            permissions: get("Permission").unwrap_or("").to_string(),
        });
    }
    Ok(policies)
}

/// How a service reads a queue's or table's policies from the engine.
pub type ReadAcl<E> = fn(&dyn Backend, &AccountName, &str) -> Result<Vec<AccessPolicy>, E>;
/// How a service replaces them.
pub type WriteAcl<E> = fn(&dyn Backend, &AccountName, &str, Vec<AccessPolicy>) -> Result<(), E>;

/// Get Queue ACL and Get Table ACL: the policies of `name`, as `<SignedIdentifiers>`.
pub async fn get<E>(
    ctx: &Ctx<'_>,
    service: Service,
    name: &str,
    read: ReadAcl<E>,
) -> Result<Response<RestBody>, RestError>
where
    E: Into<RestError> + Send + 'static,
{
    ctx.authorize(service, &Need::new(Level::Container, "r").on(name))?;
    let (account, n) = (ctx.account.clone(), name.to_string());
    let policies = ctx.blocking(move |s| read(s, &account, &n)).await?;
    Ok(xml_reply(200, policies_xml(&policies)))
}

/// Set Queue ACL and Set Table ACL: replaces the policies of `name`; a SAS naming one of
/// them (`si`) takes what it leaves out from it.
pub async fn set<E>(
    ctx: &Ctx<'_>,
    service: Service,
    name: &str,
    body: InBody,
    write: WriteAcl<E>,
) -> Result<Response<RestBody>, RestError>
where
    E: Into<RestError> + Send + 'static,
{
    ctx.authorize(service, &Need::new(Level::Container, "w").on(name))?;
    let policies = read_policies(body).await?;
    let (account, n) = (ctx.account.clone(), name.to_string());
    ctx.blocking(move |s| write(s, &account, &n, policies))
        .await?;
    Ok(empty(204))
}
