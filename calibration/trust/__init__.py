"""The trust probe's measurement (torch, transformers, bitsandbytes): train its small model
(``hops_train``) and measure its accuracy per hop count and precision (``hops_probe``). The
pure parts (tasks, compounding, report) are :mod:`qtsim.trust`."""
