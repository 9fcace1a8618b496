//! Polite helpers: measuring the host owner's load and deciding when to suspend, resume or evict herd tasks.
