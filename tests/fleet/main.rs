//! End-to-end tests of the fleet against a real nats-server (one per test, on a free port).
//! One binary for all of them, so it links once.

mod support;

mod cli;
mod discovery;
mod errors;
mod gateway;
mod hostile;
mod load;
mod models_cli;
mod models_fetch;
mod onnx;
mod onnx_registry;
mod permissions;
mod predict;
mod registry;
mod swap;
mod text;
