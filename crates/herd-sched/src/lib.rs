//! Placement: a pure function from the cluster view and the queue to assignments.
