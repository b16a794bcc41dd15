"""omni: model/loaders."""
