"""Everything the control plane asks of Ray: jobs, Serve applications, reconciliation."""
