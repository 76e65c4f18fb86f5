"""What Renga's figures are compared against: servers doing the same work with nothing else."""
