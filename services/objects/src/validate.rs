//! Input rules for names and labels, with messages that say what to change.

use std::collections::HashMap;

use sipmba_runtime::{ServiceError, ServiceResult};

/// Deepest level of the user tree (a root user is level 0). The tree's materialized paths are
/// indexed, and an index entry must stay within PostgreSQL's B-tree row limit.
pub const MAX_DEPTH: i32 = 100;
/// Most labels on one thing.
pub const MAX_LABELS: usize = 32;

/// 3 to 64 characters of `[A-Za-z0-9._@-]`.
pub fn username(name: &str) -> ServiceResult<()> {
    let len = name.chars().count();
    if !(3..=64).contains(&len) {
        return Err(ServiceError::invalid(format!(
            "`username` must be 3 to 64 characters long, got {len}"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-')))
    {
        return Err(ServiceError::invalid(format!(
            "`username` may contain only letters, digits and . _ @ -; found {bad:?}"
        )));
    }
    Ok(())
}

/// 1 to 128 characters, not only blanks, no control characters.
pub fn object_name(field: &str, name: &str) -> ServiceResult<()> {
    let len = name.chars().count();
    if name.trim().is_empty() {
        return Err(ServiceError::invalid(format!(
            "`{field}` must not be empty"
        )));
    }
    if len > 128 {
        return Err(ServiceError::invalid(format!(
            "`{field}` must be at most 128 characters long, got {len}"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ServiceError::invalid(format!(
            "`{field}` must not contain control characters"
        )));
    }
    Ok(())
}

/// A label key: 1 to 63 characters of `[A-Za-z0-9._/-]`.
pub fn label_key(field: &str, key: &str) -> ServiceResult<()> {
    if key.is_empty() || key.len() > 63 {
        return Err(ServiceError::invalid(format!(
            "{field}: label key {key:?} must be 1 to 63 characters long"
        )));
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))
    {
        return Err(ServiceError::invalid(format!(
            "{field}: label key {key:?} may contain only letters, digits and . _ / -"
        )));
    }
    Ok(())
}

/// A label value: at most 256 characters, no control characters.
pub fn label_value(field: &str, key: &str, value: &str) -> ServiceResult<()> {
    if value.chars().count() > 256 || value.chars().any(char::is_control) {
        return Err(ServiceError::invalid(format!(
            "{field}: the value of label {key:?} must be at most 256 characters without control characters"
        )));
    }
    Ok(())
}

/// A whole label map.
pub fn labels(labels: &HashMap<String, String>) -> ServiceResult<()> {
    if labels.len() > MAX_LABELS {
        return Err(ServiceError::invalid(format!(
            "`labels` has {} entries; a thing carries at most {MAX_LABELS}",
            labels.len()
        )));
    }
    for (key, value) in labels {
        label_key("`labels`", key)?;
        label_value("`labels`", key, value)?;
    }
    Ok(())
}

/// Checks label selectors: at most `max`, each key and value well formed.
pub fn selectors(selectors: &[sipmba_proto::v1::LabelSelector], max: usize) -> ServiceResult<()> {
    for s in selectors {
        label_key("`labels`", &s.key)?;
        if let Some(v) = &s.value {
            label_value("`labels`", &s.key, v)?;
        }
    }
    if selectors.len() > max {
        return Err(ServiceError::invalid(format!(
            "at most {max} label selectors are allowed; got {}",
            selectors.len()
        )));
    }
    Ok(())
}
