//! Herald's integration tests: one binary, real `redis-server` processes, Herald on port 0,
//! recording HTTP receivers.

mod support;

mod admin;
mod availability;
mod bad_input;
mod bodies;
mod chaos;
mod cli;
mod console;
mod delivery;
mod dlq;
mod docs;
mod durability;
mod fairness;
mod faults;
mod history;
mod hostile;
mod limits;
mod logs;
mod lookback;
mod metrics;
mod model;
mod notify;
mod openapi;
mod parsers;
mod process;
mod races;
mod recovery;
mod repartition;
mod slowlog;
mod topology;
mod traces;
mod upgrade;
mod usage;
mod workflow;
