//! sea-orm entities of the Objects tables. Times are milliseconds since the Unix epoch (portable
//! and correctly ordered on both PostgreSQL and SQLite).

pub mod channel_grants;
pub mod channel_things;
pub mod channels;
pub mod object_events;
pub mod thing_labels;
pub mod things;
pub mod users;

/// Stored state ACTIVE.
pub const ACTIVE: i16 = 1;
/// Stored state DISABLED.
pub const DISABLED: i16 = 2;
