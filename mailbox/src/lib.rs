//! Ferry's communication system: stores, the mailbox protocol, sealing and health.

pub mod health;
pub mod keys;
pub mod seal;
pub mod store;
pub mod time;

pub use store::{Created, Listing, Store, StoreConfig, StoreError};
