"""protocli: prototypical-part networks from the terminal.

Train a ProtoPNet, look at its prototypes, reject the ones that fire on background
("antitypes") and revise the model with its encoder frozen (Gerstenberger et al.).
"""

__version__ = "0.1.0"
