pub mod collections;
pub mod embed;
pub mod eval;
pub mod fields;
pub mod index;
pub mod search;
pub mod train;
