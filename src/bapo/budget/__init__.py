"""The forgetting budget: after training, probe an adapter at several scales and build in the largest scale whose
measured forgetting stays within the user's limits (``bapo train --forgetting-budget``)."""
