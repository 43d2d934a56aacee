"""Reports: the trap verdict, comparisons, budgets, plots and the paper's checks."""
