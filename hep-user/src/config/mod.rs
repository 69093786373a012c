//! Configuration: the TOML schema ([`schema`]), validation with errors that name the file,
//! line, column and field ([`error`]), and compilation into a [`plan::Plan`] ([`compile`]).

pub mod compile;
pub mod error;
pub mod file;
pub mod plan;
pub mod schema;

pub use compile::{compile, load};
pub use error::{ConfigError, ConfigErrors};
pub use plan::Plan;
