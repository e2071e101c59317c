"""Features: the feature-service contract, online (serving-side) access and training sets."""
