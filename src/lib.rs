//! ucanto: UCAN-based RPC in Rust, byte-for-byte interoperable with JS @ucanto.
pub mod car;
pub mod dag;
pub mod dag_json;
pub mod message;
pub mod principal;
pub mod receipt;
pub mod ucan;
pub mod validator;
