"""omni: model/layers."""
