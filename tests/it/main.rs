//! Herald's integration tests: one binary, real `redis-server` processes, Herald on port 0,
//! recording HTTP receivers.

mod support;

mod admin;
mod availability;
mod bad_input;
mod delivery;
mod docs;
mod limits;
mod lookback;
mod notify;
mod races;
