//! sea-orm entities of the SSO tables. Times are milliseconds since the Unix epoch.

/// Passwords of users (argon2id PHC strings).
pub mod credentials {
    use sea_orm::entity::prelude::*;

    /// A credential row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sso_credentials")]
    pub struct Model {
        /// The user (an Objects user id).
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: Uuid,
        /// Login name, as in Objects.
        #[sea_orm(unique)]
        pub username: String,
        /// argon2id hash in PHC form.
        pub password_hash: String,
        /// Last change (ms).
        pub updated_ms: i64,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Clients of the `client_credentials` grant: things and services.
pub mod clients {
    use sea_orm::entity::prelude::*;

    /// A client row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sso_clients")]
    pub struct Model {
        /// Public client id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub client_id: String,
        /// 2 = thing, 3 = service (`PrincipalKind`).
        pub kind: i16,
        /// The principal the client authenticates as.
        #[sea_orm(indexed)]
        pub subject: Uuid,
        /// Owner of a thing.
        pub owner: Option<Uuid>,
        /// SHA-256 of the secret (secrets are 256-bit random, so a fast hash is enough).
        pub secret_hash: String,
        /// Scopes the client may hold, space-separated.
        pub scopes: String,
        /// When the current secret was issued (ms).
        pub issued_ms: i64,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Refresh tokens: one row per token, grouped in families that start at a login.
pub mod refresh_tokens {
    use sea_orm::entity::prelude::*;

    /// A refresh-token row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sso_refresh_tokens")]
    pub struct Model {
        /// Token id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// The login this token descends from.
        #[sea_orm(indexed)]
        pub family: Uuid,
        /// The user.
        #[sea_orm(indexed)]
        pub user_id: Uuid,
        /// SHA-256 of the token.
        #[sea_orm(unique)]
        pub token_hash: String,
        /// Scopes of the family, space-separated.
        pub scopes: String,
        /// Issue time (ms).
        pub created_ms: i64,
        /// Expiry (ms).
        pub expires_ms: i64,
        /// When it was exchanged (rotated); a second use is a reuse.
        pub used_ms: Option<i64>,
        /// Revoked (the family was revoked, or the token itself).
        pub revoked: bool,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Access tokens issued, kept until they expire: what a family revocation must reach.
pub mod issued {
    use sea_orm::entity::prelude::*;

    /// An issued access token.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sso_issued")]
    pub struct Model {
        /// `jti`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub jti: Uuid,
        /// `sub`.
        #[sea_orm(indexed)]
        pub subject: Uuid,
        /// Refresh family it came from (user logins).
        #[sea_orm(indexed)]
        pub family: Option<Uuid>,
        /// `exp` (ms).
        pub expires_ms: i64,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Signing keys: the current one signs, retired ones stay published until their tokens expire.
pub mod keys {
    use sea_orm::entity::prelude::*;

    /// A key row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sso_keys")]
    pub struct Model {
        /// Key id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub kid: String,
        /// The 32 secret bytes, base64url.
        pub secret: String,
        /// Creation (ms); the newest unretired key signs.
        pub created_ms: i64,
        /// When it stopped signing (ms).
        pub retired_ms: Option<i64>,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Revocations, kept until the tokens they name have expired.
pub mod revocations {
    use sea_orm::entity::prelude::*;

    /// A revocation row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sso_revocations")]
    pub struct Model {
        /// Order of revocation.
        #[sea_orm(primary_key)]
        pub seq: i64,
        /// A single token (`jti`), or
        pub jti: Option<String>,
        /// every token of a subject issued before `not_before_ms`.
        pub subject: Option<Uuid>,
        /// Cut-off for a subject-wide revocation (ms).
        pub not_before_ms: Option<i64>,
        /// `PrincipalKind` of `subject` (0 when unknown).
        pub kind: i16,
        /// When the entry can be forgotten (ms).
        pub expires_ms: i64,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Positions in the feeds sso follows (the Objects change feed).
pub mod cursors {
    use sea_orm::entity::prelude::*;

    /// A cursor row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sso_cursors")]
    pub struct Model {
        /// Which feed.
        #[sea_orm(primary_key, auto_increment = false)]
        pub feed: String,
        /// Last position processed.
        pub position: i64,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Authorization codes (RFC 6749 §4.1, with PKCE, RFC 7636): single-use, short-lived, stored
/// hashed.
pub mod authorization_codes {
    use sea_orm::entity::prelude::*;

    /// One code.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sso_authorization_codes")]
    pub struct Model {
        /// SHA-256 of the code.
        #[sea_orm(primary_key, auto_increment = false)]
        pub code_hash: String,
        /// The public client it was issued to.
        pub client_id: String,
        /// The redirect URI of the request, matched again at the exchange.
        pub redirect_uri: String,
        /// The user who signed in.
        pub user_id: Uuid,
        /// Granted scopes, space-separated.
        pub scopes: String,
        /// BASE64URL(SHA-256(code_verifier)).
        pub code_challenge: String,
        /// The login family its tokens will belong to (revoked when the code is used twice).
        pub family: Uuid,
        /// Issue time (ms).
        pub created_ms: i64,
        /// Expiry (ms).
        #[sea_orm(indexed)]
        pub expires_ms: i64,
        /// When it was exchanged; a second exchange is refused and revokes the family.
        pub used_ms: Option<i64>,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
