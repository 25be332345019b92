"""Pure estimators: functions of networks, parameters and Hessian-vector products that never
touch a trainer, an optimizer's state in place, or the live network's buffers."""
