//! The two per-file trees of the extent-mapped page cache and the pointer that ties them to
//! the pool: [`state::ExtentStateTree`] (byte ranges x state bits, range locks),
//! [`map::ExtentMap`] (file ranges -> pool memory) and [`ptr::ExtentPtr`], and the half-open
//! [`ByteRange`] their APIs take.

pub mod map;
pub mod ptr;
pub mod range;
pub mod state;

pub use range::ByteRange;
