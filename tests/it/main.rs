//! Herald's integration tests: one binary, real `redis-server` processes, Herald on port 0,
//! recording HTTP receivers.

mod support;

mod admin;
mod availability;
mod bad_input;
mod delivery;
mod dlq;
mod docs;
mod fairness;
mod faults;
mod lookback;
mod notify;
mod process;
mod races;
mod repartition;
mod topology;
