//! Parsing of request fields shared by every service: typed ids, timestamps, pages.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use uuid::Uuid;

use crate::{ServiceError, ServiceResult};

/// Parses a required UUID field; `field` names it in the error (`thing.value`).
pub fn parse_uuid(field: &str, value: &str) -> ServiceResult<Uuid> {
    if value.is_empty() {
        return Err(ServiceError::invalid(format!("`{field}` is required")));
    }
    if value.len() > 64 {
        return Err(ServiceError::invalid(format!(
            "`{field}` is not a UUID (it is {} characters long)",
            value.len()
        )));
    }
    Uuid::try_parse(value).map_err(|_| {
        ServiceError::invalid(format!(
            "`{field}` is not a UUID: expected a form like 2f1c8f0e-6a7d-4b53-9f0a-3d1c2b4a5e6f, got {value:?}"
        ))
    })
}

/// Parses a typed id message that must be present.
pub fn required_id<T: IdValue>(field: &str, id: Option<&T>) -> ServiceResult<Uuid> {
    match id {
        Some(id) => parse_uuid(&format!("{field}.value"), id.id_value()),
        None => Err(ServiceError::invalid(format!("`{field}` is required"))),
    }
}

/// Parses a typed id message that may be absent.
pub fn optional_id<T: IdValue>(field: &str, id: Option<&T>) -> ServiceResult<Option<Uuid>> {
    id.map(|id| parse_uuid(&format!("{field}.value"), id.id_value()))
        .transpose()
}

/// The typed id messages of `sipmba.v1` (`UserId`, `ThingId`, ...).
pub trait IdValue {
    /// The UUID string.
    fn id_value(&self) -> &str;
}

macro_rules! id_value {
    ($($t:ident),*) => {$(
        impl IdValue for sipmba_proto::v1::$t {
            fn id_value(&self) -> &str { &self.value }
        }
    )*};
}
id_value!(UserId, ThingId, ChannelId, CommandId, RuleId);

/// True for a name of 1 to 64 characters of `[A-Za-z0-9._-]`: metric names and command names.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Largest page a list call returns.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Page size when the request says 0.
pub const DEFAULT_PAGE_SIZE: u32 = 100;

/// A decoded page request: the size, and the last key of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Items to return.
    pub size: u64,
    /// Exclusive lower bound (the last id returned before).
    pub after: Option<Uuid>,
    fingerprint: u64,
}

impl Page {
    /// Decodes `page`; `filters` must describe every filter of the request, so that a token is
    /// refused when used with other filters.
    pub fn decode(
        page: Option<&sipmba_proto::v1::PageRequest>,
        filters: &str,
    ) -> ServiceResult<Self> {
        let fingerprint = fnv1a(filters.as_bytes());
        let (size, token) = page.map_or((0, ""), |p| (p.page_size, p.page_token.as_str()));
        if size > MAX_PAGE_SIZE {
            return Err(ServiceError::invalid(format!(
                "`page.page_size` {size} exceeds the maximum of {MAX_PAGE_SIZE}; ask for at most {MAX_PAGE_SIZE} and follow `next_page_token`"
            )));
        }
        let size = if size == 0 { DEFAULT_PAGE_SIZE } else { size };
        let after = if token.is_empty() {
            None
        } else {
            let bad = || {
                ServiceError::invalid(
                    "`page.page_token` is not a token this list returned; start again with an empty token",
                )
            };
            let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
            if raw.len() != 24 {
                return Err(bad());
            }
            let (id, fp) = raw.split_at(16);
            let fp = u64::from_be_bytes(fp.try_into().map_err(|_| bad())?);
            if fp != fingerprint {
                return Err(ServiceError::invalid(
                    "`page.page_token` was issued for different filters; repeat the request with the filters of the first page",
                ));
            }
            Some(Uuid::from_slice(id).map_err(|_| bad())?)
        };
        Ok(Self {
            size: u64::from(size),
            after,
            fingerprint,
        })
    }

    /// Items to fetch: one more than the page, to know whether another page follows.
    pub fn fetch_limit(&self) -> u64 {
        self.size + 1
    }

    /// Cuts `items` (fetched with [`Page::fetch_limit`]) to the page and returns the next token.
    pub fn finish<T>(&self, items: &mut Vec<T>, key: impl Fn(&T) -> Uuid) -> String {
        let size = usize::try_from(self.size).unwrap_or(usize::MAX);
        if items.len() <= size {
            return String::new();
        }
        items.truncate(size);
        items
            .last()
            .map_or_else(String::new, |last| self.token_after(key(last)))
    }

    /// The token of a page starting after `id` (for a list that stops early, e.g. after
    /// examining as many rows as it may in one call).
    pub fn token_after(&self, id: Uuid) -> String {
        let mut raw = id.as_bytes().to_vec();
        raw.extend_from_slice(&self.fingerprint.to_be_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }
}

/// FNV-1a: stable across builds and replicas, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Milliseconds since the epoch to a protobuf timestamp.
pub fn timestamp_from_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// A protobuf timestamp to milliseconds since the epoch; `field` names it in the error.
pub fn timestamp_to_ms(field: &str, ts: &prost_types::Timestamp) -> ServiceResult<i64> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(ServiceError::invalid(format!(
            "`{field}.nanos` must be between 0 and 999999999"
        )));
    }
    ts.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(ts.nanos / 1_000_000)))
        .filter(|ms| (0..=253_402_300_799_000).contains(ms))
        .ok_or_else(|| ServiceError::invalid(format!("`{field}` is outside years 1970 to 9999")))
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipmba_proto::v1::PageRequest;

    #[test]
    fn page_token_round_trips_and_is_bound_to_filters() {
        let page = Page::decode(None, "owner=a").unwrap();
        assert_eq!(page.size, 100);
        let ids: Vec<Uuid> = (0..101).map(|_| Uuid::new_v4()).collect();
        let mut items = ids.clone();
        let token = page.finish(&mut items, |u| *u);
        assert_eq!(items.len(), 100);
        let req = PageRequest {
            page_size: 0,
            page_token: token.clone(),
        };
        assert_eq!(
            Page::decode(Some(&req), "owner=a").unwrap().after,
            Some(ids[99])
        );
        let err = Page::decode(Some(&req), "owner=b").unwrap_err();
        assert!(err.to_string().contains("different filters"), "{err}");
    }

    #[test]
    fn bad_pages_are_refused_with_a_reason() {
        let huge = PageRequest {
            page_size: 1_000_000,
            page_token: String::new(),
        };
        assert!(
            Page::decode(Some(&huge), "")
                .unwrap_err()
                .to_string()
                .contains("maximum of 1000")
        );
        let junk = PageRequest {
            page_size: 10,
            page_token: "!!".into(),
        };
        assert!(matches!(
            Page::decode(Some(&junk), ""),
            Err(ServiceError::InvalidArgument(_))
        ));
    }

    #[test]
    fn uuids_are_checked() {
        assert!(
            parse_uuid("id.value", "nope")
                .unwrap_err()
                .to_string()
                .contains("not a UUID")
        );
        assert!(
            parse_uuid("id.value", "")
                .unwrap_err()
                .to_string()
                .contains("required")
        );
        assert!(parse_uuid("id.value", &Uuid::new_v4().to_string()).is_ok());
    }
}
