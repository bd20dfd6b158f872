use std::{collections::BTreeSet, fmt};

use uuid::Uuid;

/// The kind of principal a token was issued to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A user of the tree.
    User,
    /// A device.
    Thing,
    /// A platform component (operator, processing, sso).
    Service,
}

impl Kind {
    /// The value of the `kind` claim.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::Thing => "thing",
            Kind::Service => "service",
        }
    }

    /// Parses the `kind` claim.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Kind::User),
            "thing" => Some(Kind::Thing),
            "service" => Some(Kind::Service),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is calling: the verified content of an access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// User, thing or service.
    pub kind: Kind,
    /// The subject (`sub`).
    pub subject: Uuid,
    /// Granted scopes (`scope`, space-separated in the token).
    pub scopes: BTreeSet<String>,
    /// The owning user of a thing (`owner`); `None` for users and services.
    pub owner: Option<Uuid>,
    /// Token id (`jti`), for revocation.
    pub token_id: String,
    /// Expiry (`exp`), seconds since the Unix epoch.
    pub expires_at: i64,
    /// Issue time (`iat`), seconds since the Unix epoch; 0 when the token has none.
    pub issued_at: i64,
}

impl Principal {
    /// True when the token carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }

    /// `kind:uuid`, the form used in audit fields (never the token itself).
    pub fn actor(&self) -> String {
        format!("{}:{}", self.kind, self.subject)
    }

    /// The caller of a request that passed the [`crate::AuthLayer`]; [`NoPrincipal`] when the
    /// request carried no token (a method the access policy leaves open).
    pub fn from_request<T>(request: &tonic::Request<T>) -> Result<&Principal, NoPrincipal> {
        request.extensions().get::<Principal>().ok_or(NoPrincipal)
    }
}

/// A request without a verified caller: UNAUTHENTICATED, "missing bearer token".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("missing bearer token")]
pub struct NoPrincipal;

impl From<NoPrincipal> for tonic::Status {
    fn from(e: NoPrincipal) -> Self {
        tonic::Status::unauthenticated(e.to_string())
    }
}

/// The scopes SIP-MBA defines.
pub mod scopes {
    /// Read users of one's subtree.
    pub const USERS_READ: &str = "users:read";
    /// Create, disable, enable and move users of one's subtree.
    pub const USERS_WRITE: &str = "users:write";
    /// Read things.
    pub const THINGS_READ: &str = "things:read";
    /// Create, change and delete things.
    pub const THINGS_WRITE: &str = "things:write";
    /// Read channels.
    pub const CHANNELS_READ: &str = "channels:read";
    /// Create channels, connect things, grant access.
    pub const CHANNELS_WRITE: &str = "channels:write";
    /// Read telemetry.
    pub const TELEMETRY_READ: &str = "telemetry:read";
    /// Publish telemetry (things).
    pub const TELEMETRY_WRITE: &str = "telemetry:write";
    /// Send commands.
    pub const COMMANDS_WRITE: &str = "commands:write";
    /// Receive one's own commands (things); read the state of sent commands (users).
    pub const COMMANDS_READ: &str = "commands:read";
    /// Read processing rules and their firings.
    pub const RULES_READ: &str = "rules:read";
    /// Create, change and delete processing rules.
    pub const RULES_WRITE: &str = "rules:write";
    /// Introspect tokens (RFC 7662; services).
    pub const TOKENS_INTROSPECT: &str = "tokens:introspect";
    /// Revoke any subject's tokens (services).
    pub const TOKENS_ADMIN: &str = "tokens:admin";
    /// Act on every object, create root users (sso, operator).
    pub const OBJECTS_ADMIN: &str = "objects:admin";
    /// Ask Objects for authorization decisions (control, processing, sso).
    pub const OBJECTS_AUTHORIZE: &str = "objects:authorize";
    /// Read the Objects change feed (sso).
    pub const OBJECTS_EVENTS: &str = "objects:events";

    /// Every scope a user token may carry.
    pub const USER_SCOPES: &[&str] = &[
        USERS_READ,
        USERS_WRITE,
        THINGS_READ,
        THINGS_WRITE,
        CHANNELS_READ,
        CHANNELS_WRITE,
        TELEMETRY_READ,
        COMMANDS_READ,
        COMMANDS_WRITE,
        RULES_READ,
        RULES_WRITE,
    ];

    /// Every scope a thing token may carry.
    pub const THING_SCOPES: &[&str] = &[TELEMETRY_WRITE, COMMANDS_READ];
}
