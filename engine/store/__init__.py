"""The store protocol: heads and their compare-and-swap commits of typed operations, data keys,
load-job records and the marks of who is doing which job."""
