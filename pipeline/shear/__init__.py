"""Shear: PSF-corrected shapes, counterfactual responses, the m and c fit and the validation harness."""
