//! The cross-region lab (issue 14): one machine plays two regions, a witness and clients.
//! Each site is a network namespace ([`netns`]); every connection between sites crosses
//! a userspace WAN ([`wan`], [`hub`]; [`udp`] for DNS queries) that drills delay, stall
//! and cut; [`topology`] is the pure map of addresses, ports and configs; [`regions`]
//! starts the programs.

pub mod drill;
pub mod hub;
pub mod netns;
pub mod regions;
pub mod topology;
pub mod udp;
pub mod wan;
