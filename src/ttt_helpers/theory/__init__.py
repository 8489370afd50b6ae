"""The linear-attention theory of the paper: tasks, model, moments, the TTT step, and its analysis."""
