//! Who is calling: the client listener's checks before a request reaches
//! a service.
//!
//! [`layer`]: every request on the client listener passes through
//! [`AuthLayer`]. A plaintext client on a listener that requires TLS is
//! answered with `UNAUTHENTICATED` / `TLS_REQUIRED` saying so (instead of a
//! handshake failure it could not explain).

pub mod layer;

pub use layer::AuthLayer;
