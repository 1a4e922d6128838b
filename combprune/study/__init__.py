"""Studies: run sets of instances against sets of solvers, collect gap/time records, report."""
