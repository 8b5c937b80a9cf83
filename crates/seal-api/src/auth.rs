//! Who may call what. Every route is declared through [`Routes::route`]
//! with a [`Methods`] value, and a `Methods` can only be made by naming
//! the [`Access`] each method needs ([`viewer`], [`deployer`], [`admin`],
//! [`public`]): a route without a declared role cannot be written.
//!
//! The guard of each method authenticates the bearer token (401 for a
//! missing, unknown or revoked one), checks the role (403), and hands the
//! [`Principal`] to the handler, before the handler runs, so nothing
//! changes on either refusal. The role is bound to the route's
//! declaration, never decided by a value in the path. Handlers that act on
//! an environment call `Principal::require_env` before they change
//! anything.

use crate::error::ApiError;
use axum::Extension;
use axum::extract::{FromRequestParts, Request};
use axum::handler::Handler;
use axum::http::{Method, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use seal_control::{Control, ControlError, Principal, Role};
use std::sync::Arc;

type State = Arc<Control>;

/// What a caller needs to reach a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token (the health check).
    Public,
    /// A token with at least this role.
    Role(Role),
    /// A publisher (whose token names the queue: the handler checks it)
    /// or a deployer or admin: enqueuing events.
    Publish,
    /// An admin token not limited to environments: what reaches beyond one
    /// environment (tokens, policies, environments, budgets), so a limited
    /// admin cannot mint itself an unlimited token.
    UnlimitedAdmin,
}

/// One declared route method: its method, path template and access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
}

/// The methods of one route, each with its access.
pub struct Methods {
    router: MethodRouter<State>,
    declared: Vec<(Method, Access)>,
}

fn guarded<H, T>(method: Method, access: Access, handler: H) -> Methods
where
    H: Handler<T, State>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
    let mut router = axum::routing::on(filter, handler);
    if access != Access::Public {
        router = router.route_layer(axum::middleware::from_fn(
            move |control: Extension<State>, req: Request, next: Next| {
                guard(control.0, access, req, next)
            },
        ));
    }
    Methods {
        router,
        declared: vec![(method, access)],
    }
}

/// A method anyone may call.
pub fn public<H: Handler<T, State>, T: 'static>(method: Method, handler: H) -> Methods {
    guarded(method, Access::Public, handler)
}

/// A method any valid token may call (reads).
pub fn viewer<H: Handler<T, State>, T: 'static>(method: Method, handler: H) -> Methods {
    guarded(method, Access::Role(Role::Viewer), handler)
}

/// A method that changes what serves (deployer or admin).
pub fn deployer<H: Handler<T, State>, T: 'static>(method: Method, handler: H) -> Methods {
    guarded(method, Access::Role(Role::Deployer), handler)
}

/// Enqueuing events: a publisher for that queue, or a deployer or admin.
pub fn publisher<H: Handler<T, State>, T: 'static>(method: Method, handler: H) -> Methods {
    guarded(method, Access::Publish, handler)
}

/// A method only an admin for all environments may call.
pub fn admin<H: Handler<T, State>, T: 'static>(method: Method, handler: H) -> Methods {
    guarded(method, Access::UnlimitedAdmin, handler)
}

impl Methods {
    /// Adds another method to the same route.
    pub fn and(mut self, other: Methods) -> Self {
        self.router = self.router.merge(other.router);
        self.declared.extend(other.declared);
        self
    }

    /// Bodies of this route may be up to `bytes` long (the API's default
    /// is small).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.router = self
            .router
            .layer(axum::extract::DefaultBodyLimit::max(bytes));
        self
    }
}

/// The API's routes with the access each one declared.
#[derive(Default)]
pub struct Routes {
    pub(crate) router: axum::Router<State>,
    pub(crate) declared: Vec<Declared>,
}

impl Routes {
    pub fn route(mut self, path: &'static str, methods: Methods) -> Self {
        self.router = self.router.route(path, methods.router);
        self.declared.extend(
            methods
                .declared
                .into_iter()
                .map(|(method, access)| Declared {
                    method,
                    path,
                    access,
                }),
        );
        self
    }

    pub fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        self.declared.extend(other.declared);
        self
    }

    /// Every declared (method, path, access), for tests and docs.
    pub fn declared(&self) -> &[Declared] {
        &self.declared
    }
}

/// Authenticates, checks the access, and hands the [`Principal`] on.
async fn guard(control: State, access: Access, mut req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let needed = match access {
        Access::Public => return next.run(req).await,
        Access::Role(role) => role,
        Access::Publish => Role::Publisher,
        Access::UnlimitedAdmin => Role::Admin,
    };
    let principal = match control.authenticate(header.as_deref()).await {
        Ok(p) => p,
        Err(e) => return unauthorized(e.into()),
    };
    if let Err(e) = principal.require_role(needed) {
        return ApiError::from(e).into_response();
    }
    // A viewer reads; enqueuing changes state.
    if access == Access::Publish
        && principal.role == Role::Viewer
        && let Err(e) = principal.require_role(Role::Deployer)
    {
        return ApiError::from(e).into_response();
    }
    if access == Access::UnlimitedAdmin && principal.environments.is_some() {
        return ApiError::from(ControlError::forbidden(format!(
            "token {} is limited to some environments; this needs an admin token for all of them",
            principal.name
        )))
        .into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

fn unauthorized(e: ApiError) -> Response {
    let mut resp = e.into_response();
    if resp.status() == axum::http::StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer realm=\"seal\""),
        );
    }
    resp
}

/// The authenticated caller, for handlers.
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| ControlError::unauthorized("authentication required").into())
    }
}

impl std::ops::Deref for Caller {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.0
    }
}
