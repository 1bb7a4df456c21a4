pub mod collections;
pub mod eval;
pub mod index;
pub mod search;
