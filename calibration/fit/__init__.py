"""Every way a profile's constants are fitted and a profile is made from them: lmfit over the
model's own functions on this machine's recorded points (``measured``, ``power_fit``), the
calibrated profile (``profile_builder``) and host part (``host_part``), the joint fit to public
rows (``public``, ``public_rows``, ``public_refit``) and the spec-derived profiles
(``spec_profiles``). Never imports torch: ``qtsim fit`` runs on any machine."""
