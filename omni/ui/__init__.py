"""User interfaces: the browser demo and the Gradio page (thin clients of `app`)."""
