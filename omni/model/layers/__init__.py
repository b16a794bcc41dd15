"""omni: omni/model/layers."""
