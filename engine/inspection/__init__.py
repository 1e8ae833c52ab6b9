"""Looking inside the model: the inspection pass (attention, confidence, logit lens) and the "How it works" walk."""
