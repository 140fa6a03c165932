//! Harness for Ferry's end-to-end suites: real store servers, agent and manager processes.

pub mod bench;
pub mod cloud;
pub mod counting;
pub mod debian;
pub mod fidelity;
pub mod netns;
pub mod procs;
pub mod servers;
pub mod util;
pub mod vm;
pub mod webmove;
