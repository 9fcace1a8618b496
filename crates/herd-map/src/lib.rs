//! `herd map`: templates, argument sources, job log, and the batch driver.
