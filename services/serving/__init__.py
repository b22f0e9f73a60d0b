"""The Ray Serve application that answers predictions for a promoted model."""
