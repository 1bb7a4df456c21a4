//! Who may do what, and how much at once: API keys, the overload limit and the read timeout.
//!
//! Every request falls in one of three classes by its method and route: open (the page, the
//! health check, the API description), reads (GET, and the two POST routes that only search)
//! and writes (everything else). With keys configured, reads need the search or the admin key
//! and writes the admin key. Keys are compared by their SHA-256 digests, byte by byte without
//! stopping early, so the time an answer takes tells nothing about how close a guess was.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::web;
use sha2::{Digest, Sha256};

use crate::config::{ApiKey, ServerConfig};
use crate::error::ApiError;
use crate::AppState;

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Anyone: the page, the health check, the API description, and unknown routes (404).
    Open,
    Read,
    Write,
}

/// POST routes that only read.
const SEARCHES: [&str; 2] = ["/collections/{name}/_search", "/collections/{name}/_rank_eval"];
const OPEN: [&str; 4] = ["/", "/health", "/openapi.json", "/sample.jsonl"];

impl Access {
    /// The class of a request to the route `pattern` (None: no route matched).
    pub(crate) fn of(method: &Method, pattern: Option<&str>) -> Access {
        match pattern {
            None => Access::Open,
            Some(pattern) if OPEN.contains(&pattern) && method == Method::GET => Access::Open,
            Some(_) if method == Method::GET || method == Method::HEAD => Access::Read,
            Some(pattern) if method == Method::POST && SEARCHES.contains(&pattern) => Access::Read,
            Some(_) => Access::Write,
        }
    }
}

/// The configured keys, as digests.
pub(crate) struct Keys {
    admin: Option<[u8; 32]>,
    search: Option<[u8; 32]>,
}

/// Whom a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Admin,
    Searcher,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Equal digests, in a time that does not depend on where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

impl Keys {
    pub(crate) fn new(config: &ServerConfig) -> Keys {
        let digest_of = |key: &Option<ApiKey>| key.as_ref().map(|key| digest(key.as_bytes()));
        Keys { admin: digest_of(&config.admin_key), search: digest_of(&config.search_key) }
    }

    pub(crate) fn required(&self) -> bool {
        self.admin.is_some()
    }

    fn holder(&self, presented: &[u8]) -> Option<Holder> {
        let presented = digest(presented);
        // Both comparisons always run.
        let admin = self.admin.as_ref().is_some_and(|key| same(key, &presented));
        let search = self.search.as_ref().is_some_and(|key| same(key, &presented));
        match (admin, search) {
            (true, _) => Some(Holder::Admin),
            (false, true) => Some(Holder::Searcher),
            (false, false) => None,
        }
    }

    /// Whether a request with this `Authorization` header may have `access`. A missing, malformed
    /// or unknown key gets the same 401, so an answer never tells a wrong key from a missing one.
    fn check(&self, access: Access, authorization: Option<&HeaderValue>) -> Result<(), ApiError> {
        if access == Access::Open || !self.required() {
            return Ok(());
        }
        let presented = authorization
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim);
        match presented.and_then(|key| self.holder(key.as_bytes())) {
            Some(Holder::Admin) => Ok(()),
            Some(Holder::Searcher) if access == Access::Read => Ok(()),
            Some(Holder::Searcher) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this key may only read and search; changes need the admin key",
            )),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this needs a valid API key, sent as `Authorization: Bearer KEY`",
            )),
        }
    }
}

/// Requests and writes being served now.
#[derive(Default)]
pub(crate) struct Load {
    requests: AtomicUsize,
    writes: AtomicUsize,
}

/// A place in one of [`Load`]'s counts, given back when dropped.
struct Slot<'a>(&'a AtomicUsize);

impl<'a> Slot<'a> {
    /// A slot, unless `limit` are taken.
    fn take(count: &'a AtomicUsize, limit: usize) -> Option<Slot<'a>> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .ok()
            .map(|_| Slot(count))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn overloaded(what: &str, limit: usize, setting: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        format!("{limit} {what} are being served ({setting}); try again shortly"),
    )
}

fn refuse(request: ServiceRequest, error: ApiError) -> ServiceResponse<BoxBody> {
    let response = actix_web::ResponseError::error_response(&error);
    request.into_response(response)
}

/// The middleware: checks the key, takes a slot or answers 503, and bounds how long a read runs.
pub(crate) async fn guard(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = request.app_data::<web::Data<AppState>>().cloned() else {
        return next.call(request).await.map(ServiceResponse::map_into_boxed_body);
    };
    let access = Access::of(request.method(), request.match_pattern().as_deref());
    if let Err(error) = state.keys.check(access, request.headers().get(header::AUTHORIZATION)) {
        return Ok(refuse(request, error));
    }
    if access == Access::Open {
        return next.call(request).await.map(ServiceResponse::map_into_boxed_body);
    }
    let config = &state.config;
    let Some(_request_slot) = Slot::take(&state.load.requests, config.max_concurrent_requests)
    else {
        let error =
            overloaded("requests", config.max_concurrent_requests, "max_concurrent_requests");
        return Ok(refuse(request, error));
    };
    if access == Access::Write {
        let Some(_write_slot) = Slot::take(&state.load.writes, config.max_concurrent_writes) else {
            let error = overloaded("writes", config.max_concurrent_writes, "max_concurrent_writes");
            return Ok(refuse(request, error));
        };
        return next.call(request).await.map(ServiceResponse::map_into_boxed_body);
    }
    let limit = Duration::from_secs(config.request_timeout_secs);
    // Routing needs the request unshared, so a timed-out answer cannot be built on a clone of
    // it: it goes back as an error, which actix answers with `ApiError`'s response.
    let (method, route) = (request.method().to_string(), request.match_pattern());
    match actix_web::rt::time::timeout(limit, next.call(request)).await {
        Ok(response) => response.map(ServiceResponse::map_into_boxed_body),
        Err(_) => {
            let route = route.unwrap_or_default();
            state.metrics.record(&method, &route, 503, limit.as_secs_f64());
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!(
                    "the request took over {} s (request_timeout_secs)",
                    config.request_timeout_secs
                ),
            )
            .into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(admin: Option<&str>, search: Option<&str>) -> ServerConfig {
        ServerConfig {
            admin_key: admin.map(ApiKey::new),
            search_key: search.map(ApiKey::new),
            ..ServerConfig::default()
        }
    }

    fn bearer(key: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap()
    }

    #[test]
    fn routes_fall_in_the_class_their_method_and_pattern_say() {
        let of = |method: Method, pattern: &str| Access::of(&method, Some(pattern));
        assert_eq!(of(Method::GET, "/health"), Access::Open);
        assert_eq!(of(Method::GET, "/metrics"), Access::Read);
        assert_eq!(of(Method::GET, "/collections/{name}"), Access::Read);
        assert_eq!(of(Method::POST, "/collections/{name}/_search"), Access::Read);
        assert_eq!(of(Method::POST, "/collections/{name}/_bulk"), Access::Write);
        assert_eq!(of(Method::PUT, "/collections/{name}"), Access::Write);
        assert_eq!(of(Method::DELETE, "/collections/{name}/documents/{id}"), Access::Write);
        // A POST to an open route is not open.
        assert_eq!(of(Method::POST, "/health"), Access::Write);
        assert_eq!(Access::of(&Method::DELETE, None), Access::Open);
    }

    #[test]
    fn keys_grant_what_their_holder_may_do_and_nothing_else() {
        let admin = "admin-key-0123456789";
        let search = "search-key-0123456789";
        let keys = Keys::new(&config(Some(admin), Some(search)));
        let status = |access, key: Option<&str>| {
            keys.check(access, key.map(bearer).as_ref()).err().map(|e| e.status.as_u16())
        };
        assert_eq!(status(Access::Write, Some(admin)), None);
        assert_eq!(status(Access::Read, Some(admin)), None);
        assert_eq!(status(Access::Read, Some(search)), None);
        assert_eq!(status(Access::Write, Some(search)), Some(403));
        assert_eq!(status(Access::Write, None), Some(401));
        assert_eq!(status(Access::Read, Some("admin-key-012345678")), Some(401));
        assert_eq!(status(Access::Read, Some("")), Some(401));
        assert_eq!(status(Access::Open, None), None);
        let malformed = HeaderValue::from_str(&format!("Basic {admin}")).unwrap();
        assert!(keys.check(Access::Read, Some(&malformed)).is_err());
        // Missing and wrong keys get the same answer.
        let missing = keys.check(Access::Write, None).unwrap_err();
        let wrong = keys.check(Access::Write, Some(&bearer("wrong-key-0123456789"))).unwrap_err();
        assert_eq!(missing, wrong);

        let open = Keys::new(&config(None, None));
        assert!(!open.required());
        assert!(open.check(Access::Write, None).is_ok());
    }

    #[test]
    fn a_slot_is_refused_at_the_limit_and_freed_when_dropped() {
        let count = AtomicUsize::new(0);
        let first = Slot::take(&count, 2).unwrap();
        let second = Slot::take(&count, 2).unwrap();
        assert!(Slot::take(&count, 2).is_none());
        drop(first);
        assert!(Slot::take(&count, 2).is_some());
        drop(second);
        assert_eq!(count.load(Ordering::Acquire), 0);
    }
}
