//! xstore's web front (README "Web users"): customers restore for themselves, operators see
//! the fleet. This crate holds who may log in ([`users`]), their sessions and CSRF tokens
//! ([`session`]), the limits on login attempts ([`limit`]), safe download headers
//! ([`disposition`]) and the audit log of logins and downloads ([`audit`]); the server, its
//! pages and WebDAV are to build on them.

pub mod audit;
pub mod disposition;
pub mod limit;
mod private;
pub mod session;
pub mod users;

pub use users::{NewUser, Role, UsersError, WebUser, WebUsers, DEFAULT_USERS_FILE};
