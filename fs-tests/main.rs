//! Tests that mount extentfs for real (root and /dev/fuse required) and compare what they
//! see through the mount against a model or against SOURCE.

#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

mod cli;
mod coherence;
mod data;
mod fileattr;
mod handles;
mod harness;
mod local_fs;
mod package;
mod posix;
mod reliability;
mod smoke;
mod stats;
mod suites;
mod writeback;
