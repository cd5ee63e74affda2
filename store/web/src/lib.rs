//! xstore's web front (`xstore serve-web`, README "Web"): customers restore for themselves,
//! operators see the fleet. This crate holds who may log in ([`users`]); the server, its
//! pages and WebDAV build on it.

pub mod users;

pub use users::{NewUser, Role, UsersError, WebUser, WebUsers, DEFAULT_USERS_FILE};
