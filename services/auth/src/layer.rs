use std::{
    collections::HashMap,
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use tower::{Layer, Service};

use crate::{AuthError, Verifier};

/// What a request path needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token (health, reflection, metrics, token endpoints).
    Public,
    /// Any valid token; the handler decides.
    Authenticated,
    /// A valid token carrying this scope.
    Scope(&'static str),
}

/// Maps request paths (`/sipmba.v1.UserService/CreateUser`) to what they need. Paths not listed
/// need a valid token ([`Access::Authenticated`]); prefixes can be declared public.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    exact: HashMap<&'static str, Access>,
    public_prefixes: Vec<&'static str>,
}

impl AccessPolicy {
    /// A policy where gRPC health and reflection are public.
    pub fn new() -> Self {
        Self {
            exact: HashMap::new(),
            public_prefixes: vec![
                "/grpc.health.v1.Health/",
                "/grpc.reflection.v1.ServerReflection/",
                "/grpc.reflection.v1alpha.ServerReflection/",
            ],
        }
    }

    /// Declares what `path` needs.
    pub fn route(mut self, path: &'static str, access: Access) -> Self {
        self.exact.insert(path, access);
        self
    }

    /// Adds every `(path, access)` pair.
    pub fn routes(mut self, routes: impl IntoIterator<Item = (&'static str, Access)>) -> Self {
        self.exact.extend(routes);
        self
    }

    /// Declares every path starting with `prefix` public.
    pub fn public_prefix(mut self, prefix: &'static str) -> Self {
        self.public_prefixes.push(prefix);
        self
    }

    /// What `path` needs.
    pub fn access(&self, path: &str) -> Access {
        if let Some(access) = self.exact.get(path) {
            return *access;
        }
        if self.public_prefixes.iter().any(|p| path.starts_with(p)) {
            return Access::Public;
        }
        Access::Authenticated
    }

    /// The declared path equal to `path`, as a `'static` string (for bounded metric labels).
    pub fn known_path(&self, path: &str) -> Option<&'static str> {
        self.exact.get_key_value(path).map(|(k, _)| *k)
    }
}

/// A tower layer that authenticates gRPC requests and puts the [`crate::Principal`] into the
/// request extensions.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    verifier: Verifier,
    policy: Arc<AccessPolicy>,
}

impl AuthLayer {
    /// Applies `policy` with `verifier`.
    pub fn new(verifier: Verifier, policy: AccessPolicy) -> Self {
        Self {
            verifier,
            policy: Arc::new(policy),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            verifier: self.verifier.clone(),
            policy: self.policy.clone(),
        }
    }
}

/// The service produced by [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    verifier: Verifier,
    policy: Arc<AccessPolicy>,
}

impl<S, B, RB> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone is not ready; keep the ready one for this request (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let access = self.policy.access(req.uri().path());
        let verifier = self.verifier.clone();
        Box::pin(async move {
            if access == Access::Public {
                return inner.call(req).await;
            }
            let principal = match bearer(&req) {
                Ok(token) => verifier.verify(token).await,
                Err(e) => Err(e),
            };
            let principal = match principal {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(path = req.uri().path(), reason = %e, "request refused");
                    return Ok(e.to_status().into_http());
                }
            };
            if let Access::Scope(scope) = access
                && !principal.has_scope(scope)
            {
                let status = tonic::Status::permission_denied(format!(
                    "this call needs the `{scope}` scope, which the {} token does not carry",
                    principal.kind
                ));
                return Ok(status.into_http());
            }
            req.extensions_mut().insert(principal);
            inner.call(req).await
        })
    }
}

fn bearer<B>(req: &Request<B>) -> Result<&str, AuthError> {
    let value = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?;
    let value = value
        .to_str()
        .map_err(|_| AuthError::Malformed("authorization header is not ASCII".into()))?;
    let (scheme, token) = value.split_once(' ').ok_or_else(|| {
        AuthError::Malformed("authorization header must be `Bearer <token>`".into())
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Malformed(
            "authorization header must be `Bearer <token>`".into(),
        ));
    }
    Ok(token.trim())
}
