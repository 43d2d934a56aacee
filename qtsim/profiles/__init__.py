"""Hardware and host profiles: loading, validation, spec priors, custom profiles."""
