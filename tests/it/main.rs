//! Black-box tests: a real `tether serve` on loopback, real providers, real runtimes,
//! driven only through the public contract (REST, WebSockets, the records file).

// Helpers are `pub` for the test modules; nothing here is reachable from outside.
#![allow(unreachable_pub)]

mod api;
mod audit;
mod author_loop;
mod boundaries;
mod certs;
mod cli_env;
mod cluster;
mod cluster_entries;
mod crashloop;
mod cross_site;
mod dashboard;
mod docs_contract;
mod edges;
mod events;
mod example_app;
mod exposure;
mod git_worktree;
mod hostile;
mod hostile_server;
mod idle;
mod journal;
mod js_client;
mod lifecycle;
mod linked_dirs;
mod logs;
mod openapi;
mod operator_config;
mod operator_edges;
mod providers;
mod provisioning;
mod proxies;
mod quotas;
mod records;
mod relay;
mod relay_acks;
mod relay_edges;
mod removals;
mod sandbox;
mod spine;
mod storage;
mod support;
mod swapped_files;
mod tenancy;
mod tickets;
mod tls;
mod token_rights;
mod walkthroughs;
mod watched_files;
mod worlds;
