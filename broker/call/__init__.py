"""Live calls: the supervisor of each call's sideband, its leash, tamper policy and clocks."""
