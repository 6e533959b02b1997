"""Box-constrained and two-sided L1 certificates (placeholder: filled in by the certificates work)."""
