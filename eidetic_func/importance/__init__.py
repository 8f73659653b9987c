"""Importance: per-neuron scores (l1, l2, random, Taylor) and the per-sample gradient engine
shared by Taylor, Fisher and MAS."""
