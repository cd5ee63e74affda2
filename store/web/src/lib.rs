//! xstore's web front (README "Web front"): customers restore for themselves, operators see
//! the fleet. [`serve_web`] runs it: logins of the users file ([`users`]) with sessions and
//! CSRF tokens ([`session`]) and limited attempts ([`limit`]); pages of the hosts, snapshots,
//! directories and file versions a user may see ([`pages`]); downloads that stream
//! ([`stream`]) with headers no file name can break ([`disposition`]); the audit log of
//! logins and downloads ([`audit`]).

pub mod audit;
mod browsing;
mod chart;
mod dav;
mod dav_logins;
pub mod disposition;
mod download;
mod fleetview;
pub mod history;
mod jsonl;
pub mod limit;
mod locate;
mod login;
pub mod pages;
pub mod paths;
mod private;
pub mod server;
pub mod session;
mod state;
pub mod stream;
pub mod users;

pub use server::{serve_web, Listen, ServeError, WebConfig};
pub use users::{NewUser, Role, UsersError, WebUser, WebUsers, DEFAULT_USERS_FILE};
